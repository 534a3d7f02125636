"""Repository invariants: notebook hygiene, pins in sync, CI, README and Makefile promises."""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from softmax_repro.pipeline.runner import chapter_names

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = ["profile", "seeds", "device", "overrides", "results_dir"]


def test_source_notebooks_have_no_outputs_and_one_parameters_cell():
    names = chapter_names()
    assert names, "no notebooks found"
    for name in names:
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), name
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{name}: {len(tagged)} parameters cells"
        names_set = re.findall(r"^(\w+)\s*=", "".join(tagged[0]["source"]), re.M)
        assert names_set == PARAMETERS, f"{name}: parameters are {names_set}"
        assert nb["metadata"]["kernelspec"]["name"] == "softmax-repro", name
        source = "".join("".join(c["source"]) for c in code)
        assert "matplotlib.use(" not in source and ".backward(" not in source, name


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted
    assert "torch==2.13.0" in wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_make_help_lists_every_target():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for target in ("setup", "book", "chapter", "html", "test", "lint", "clean"):
        assert f"make {target} " in out.stdout


def test_make_chapter_without_name_explains(tmp_path):
    out = subprocess.run(["make", "chapter"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "NAME is required" in out.stdout


def test_executed_chapters_are_small_and_clean():
    for nb_path in (ROOT / "book" / "chapters").glob("*.ipynb"):
        assert nb_path.stat().st_size < 2_000_000, f"{nb_path.name} is over 2 MB"
        nb = json.loads(nb_path.read_text())
        assert "widgets" not in nb["metadata"]
        assert "hash" in nb["metadata"].get("softmax_repro", {}), nb_path.name


def test_citation_files_parse():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"].startswith("Softmax, Reproduced")


def test_publishing_workflow_parses_and_only_calls_make_targets():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    makefile = (ROOT / "Makefile").read_text()
    commands = [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
                if "run" in step]
    make_calls = [c for c in commands if c.startswith("make ")]
    assert {"make html", "make test"} <= set(make_calls)
    for call in make_calls:
        assert re.search(rf"^{call.split()[1]}:", makefile, re.M), call


def test_licence_file_matches_pyproject():
    licence = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert licence == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_workflow_grants_write_only_to_deploy_and_deploys_only_after_the_tests():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["group"]
    jobs = workflow["jobs"]
    for name, job in jobs.items():
        writes = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert writes == ({"pages", "id-token"} if name == "deploy" else set()), name
    assert {"test", "html"} <= set(jobs["deploy"]["needs"])
    assert "refs/heads/main" in jobs["deploy"]["if"]
    assert "SOFTMAX_REPRO_BOOK_URL" in workflow["env"]
    runs = " ".join(s.get("run", "") for job in jobs.values() for s in job["steps"])
    assert not re.search(r"apt(-get)? install[^\n]*\bchromium\b", runs)  # a snap shim on Ubuntu


def test_make_recipes_never_paste_user_variables_into_the_shell():
    makefile = (ROOT / "Makefile").read_text()
    recipes = "\n".join(line for line in makefile.splitlines() if line.startswith("\t"))
    for variable in ("NAME", "PROFILE", "DEVICE", "NPROC", "BOOK", "RESULTS", "TOLERANCE",
                     "JOBS", "TORCHRUN_ARGS"):
        assert f"$({variable})" not in recipes, f"$({variable}) is pasted unquoted into a recipe"
        assert re.search(rf"^export .*\b{variable}\b", makefile, re.M), variable
