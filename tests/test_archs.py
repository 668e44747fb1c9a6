"""core.archs: the one reading of CUDA arch lists (plan, verify, build, artifacts, checks)."""

from vllm_provision.core.archs import base_arch, base_archs, split_archs


def test_arch_lists_are_read_one_way():
    assert split_archs("8.0;9.0+PTX") == split_archs("8.0, 9.0+PTX") == split_archs(" 8.0 9.0+PTX ") == ["8.0", "9.0+PTX"]
    assert split_archs(["8.0", 9.0]) == ["8.0", "9.0"] and split_archs("") == []
    assert base_arch("9.0+PTX") == "9.0" and base_arch("8.6") == "8.6"
    assert base_archs(["9.0", "9.0+PTX", "8.0"]) == ("9.0", "8.0")


def test_no_other_ptx_stripping():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "vllm_provision"
    found = [str(p) for p in root.rglob("*.py") if 'removesuffix("+PTX")' in p.read_text()]
    assert found == [], found
