"""The catalog says what works: a release without a complete recipe is refused at plan time, and a recipe
holds only fields the toolkit reads."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from vllm_provision import catalog
from vllm_provision.catalog import get_release, missing_recipe, parse_release, require_recipe
from vllm_provision.core.errors import ConfigError
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts

REFUSAL_0_33 = ("vLLM 0.33.0 is in the catalog but the toolkit has no complete recipe for it (missing: "
                "the external sources its CMake build fetches ([[external]] in 0.33.0.toml); "
                "a patch series patches/0.33.0/series.toml; "
                "the extensions verify imports (extensions in 0.33.0.toml); "
                "a lock envs/locks/0.33.0/seed-py*.txt for profile seed)")


def test_release_without_recipe_is_refused_listing_the_complete_ones():
    with pytest.raises(ConfigError) as err:
        require_recipe(get_release("0.33.0"), "seed", needs_lock=True)
    assert err.value.message == REFUSAL_0_33
    assert err.value.hint == "supported releases: 0.2.2"
    assert err.value.exit_code == 2


@pytest.mark.parametrize("profile,needs_lock", [("seed", True), ("host-torch", False)])
def test_the_blog_release_is_complete(profile, needs_lock):
    assert missing_recipe(get_release("0.2.2"), profile, needs_lock=needs_lock) == []


def test_each_part_of_the_recipe_is_checked(tmp_path):
    """0.2.7 builds with setuptools like 0.2.2: given a series and a lock, only its extensions are missing."""
    release = get_release("0.2.7")
    (tmp_path / "patches" / "0.2.7").mkdir(parents=True)
    (tmp_path / "patches" / "0.2.7" / "series.toml").write_text("")
    (tmp_path / "envs" / "locks" / "0.2.7").mkdir(parents=True)
    assert missing_recipe(release, "seed", needs_lock=True, root=tmp_path) == [
        "the extensions verify imports (extensions in 0.2.7.toml)",
        "a lock envs/locks/0.2.7/seed-py*.txt for profile seed"]
    (tmp_path / "envs" / "locks" / "0.2.7" / "seed-py3.10.txt").write_text("")
    assert missing_recipe(release, "seed", needs_lock=True, root=tmp_path) == [
        "the extensions verify imports (extensions in 0.2.7.toml)"]
    assert missing_recipe(release, "other", needs_lock=False, root=tmp_path) == [
        "the extensions verify imports (extensions in 0.2.7.toml)"]


def test_plan_refuses_a_release_without_recipe(isolated):
    with pytest.raises(ConfigError) as err:
        build_plan({"release": "0.33.0", "profile": "seed"}, facts=HostFacts())
    assert err.value.message == REFUSAL_0_33 and err.value.hint == "supported releases: 0.2.2"


def test_cli_plan_of_an_incomplete_release_exits_2_with_one_error_and_one_hint(isolated):
    proc = subprocess.run([sys.executable, "-m", "invoke", "plan", "--release", "0.33.0", "--profile", "seed"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {REFUSAL_0_33}", "hint: supported releases: 0.2.2"]
    assert proc.stdout == ""


def test_a_field_nothing_reads_is_refused(tmp_path):
    recipe = tmp_path / "0.2.2.toml"
    recipe.write_text(get_release("0.2.2").path.read_text().replace('version = "0.2.2"\n',
                                                                    'version = "0.2.2"\nmin_nvcc = "11.0"\n'))
    with pytest.raises(ConfigError) as err:
        parse_release(recipe)
    assert err.value.message == "0.2.2.toml: unknown field min_nvcc"
    assert err.value.hint.startswith("the fields are: arch_list_separator, build_system, cmake_min, "
                                     "compile_cpu_seconds_per_arch, cuda_archs,")


def test_every_shipped_recipe_parses_with_only_read_fields():
    assert {r.version for r in catalog.all_releases()} == {"0.2.2", "0.2.7", "0.4.3", "0.6.6.post1", "0.22.0", "0.26.0", "0.33.0"}
