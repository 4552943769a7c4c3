"""README, values.yaml and values.schema.json agree; helm lint is clean."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from chartlib import CHART, KUBE_VERSION, PLATFORMS


def load_generator():
    spec = importlib.util.spec_from_file_location("chart_gen_readme", CHART / "hack" / "gen_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_values_table_is_up_to_date():
    problems = load_generator().run(CHART, check=True)
    assert problems == [], "\n".join(problems)


def test_generator_notices_an_undocumented_key_a_schema_gap_and_a_stale_table(tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\n# -- A new key.\nbrandNewKey: 1\n\nundocumentedKey: 2\n")
    gen = load_generator()
    problems = gen.run(chart, check=True)
    assert any("undocumentedKey has no `# --` description" in p for p in problems), problems
    assert any("brandNewKey is in values.yaml but not in the schema" in p for p in problems), problems
    assert any("documented key brandNewKey has no type in the schema" in p for p in problems), problems
    assert any("README.md: values table is stale" in p for p in problems), problems


def test_generator_rewrites_only_the_marked_section(tmp_path):
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    readme = chart / "README.md"
    original = readme.read_text()
    head, tail = original.split(load_generator().BEGIN)
    readme.write_text(head + load_generator().BEGIN + "\nstale\n" + load_generator().END
                      + tail.split(load_generator().END, 1)[1])
    assert load_generator().run(chart, check=False) == []
    assert readme.read_text() == original


def test_every_documented_default_appears_in_the_readme():
    text = (CHART / "README.md").read_text()
    gen = load_generator()
    for doc in gen.parse_comments((CHART / "values.yaml").read_text()):
        assert f"| `{doc.name}` |" in text


@pytest.mark.parametrize("platform", ("",) + PLATFORMS)
def test_helm_lint_is_clean(helm, platform):
    out = helm.run("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                   "--set", f"platform={platform}").stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("key, volume", [("cniBinDir", "cni-bin-dir"), ("cniConfDir", "cni-net-dir")])
def test_documented_platform_defaults_are_what_renders(render, key, volume):
    import re

    doc = next(d for d in load_generator().parse_comments((CHART / "values.yaml").read_text())
               if d.name == key)
    pairs = re.findall(r"(?:(\w+) )?`([^`]+)`", doc.default)
    generic = pairs[0][1]
    documented = {name: path for name, path in pairs[1:]}
    for platform in ("",) + PLATFORMS:
        m = render({"platform": platform})
        got = next(v["hostPath"]["path"] for v in m.daemonset["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == volume)
        assert got == documented.get(platform, generic), f"{key} for platform {platform or 'generic'}"
