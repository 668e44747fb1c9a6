"""`python -m vllm_provision TASK ...`, what `./inv` runs: Invoke's program over tasks.py, where a command line
Invoke cannot parse, or one holding bytes that are not UTF-8, is one `error:` and one `hint:` line, exit 2."""

from __future__ import annotations

import os
import re
import sys

from invoke import Program
from invoke.exceptions import Exit, ParseError

from vllm_provision import __version__
from vllm_provision.core import config, ui


class Inv(Program):
    """Invoke's Program with its parse errors (unknown task or flag, a flag missing its value) as bad input."""

    @staticmethod
    def _refuse(exc: ParseError) -> Exit:
        task = getattr(getattr(exc, "context", None), "name", None)
        # "Flag <Argument: arch (a)> needed value and was not given one" -> "Flag --arch needed value ..."
        message = re.sub(r"<Argument: ([\w-]+)[^>]*>", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        ui.error(message.rstrip("!") or "the command line cannot be parsed",
                 f"./inv {task} --help lists its flags" if task else "./inv --list lists the tasks; "
                 "./inv TASK --help a task's flags")
        return Exit(code=2)

    def parse_core(self, argv):
        try:
            return super().parse_core(argv)
        except ParseError as exc:
            raise self._refuse(exc) from None

    def parse_tasks(self):
        try:
            return super().parse_tasks()
        except ParseError as exc:
            raise self._refuse(exc) from None

    def parse_cleanup(self):
        try:
            return super().parse_cleanup()
        except ParseError as exc:
            raise self._refuse(exc) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    for number, arg in enumerate(argv[1:], 1):
        if config.undecodable(arg):
            ui.error(f"argument {number} ({arg}) holds bytes that are not valid UTF-8",
                     "give every flag and value as UTF-8 text")
            sys.exit(2)
    try:
        Inv(name="vllm-provision", binary="./inv", version=__version__).run(argv)
    except BrokenPipeError:          # `./inv --list | head`: the reader is gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


if __name__ == "__main__":
    main()
