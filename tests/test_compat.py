"""stapo_verl/compat.py: every private name of verl, Ray and vLLM the package uses resolves in the
installed versions, which lie in the ranges they were checked against; a gone name or a version
outside its range fails, naming it."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys

import pytest

from stapo_verl import compat

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stapo_verl")


def test_every_touched_name_resolves_in_the_installed_versions():
    compat.check()
    for touchpoint in compat.TOUCHPOINTS:
        if all(compat.installed_version(library) is not None for library in touchpoint.libraries):
            assert compat.lookup(touchpoint) is not None, touchpoint


def test_a_touchpoint_in_verls_vllm_modules_is_skipped_without_vllm(monkeypatch):
    # verl's vLLM modules refuse to import without vLLM ("vllm version None not supported")
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version", lambda name: None if name == "vllm" else real(name))
    for touchpoint in compat.TOUCHPOINTS:
        if "vllm" in touchpoint.libraries:
            monkeypatch.setitem(sys.modules, touchpoint.module, None)  # its import fails
    compat.check()


def test_a_version_outside_the_checked_range_is_named(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.0" if name == "verl" else real(name))
    with pytest.raises(RuntimeError, match=r"verl 0\.10\.0 is outside the versions .* \(>=0\.9\.1,<0\.10\)"):
        compat.check()


def test_a_gone_name_is_named(monkeypatch):
    from verl.workers.rollout import base

    monkeypatch.delattr(base, "_ROLLOUT_REGISTRY")
    with pytest.raises(RuntimeError, match=r"verl\.workers\.rollout\.base\._ROLLOUT_REGISTRY is gone"):
        compat.check()


def foreign_uses(source: str) -> list[str]:
    """In ``source``: attributes starting with one underscore reached from a name bound to verl,
    Ray or vLLM (an import of theirs), and assignments to any attribute reached from one."""
    import ast

    tree = ast.parse(source)
    foreign = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            foreign |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in LIBRARIES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            foreign |= {a.asname or a.name for a in node.names}

    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and root(node.value) in foreign:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                uses.append(ast.unparse(node))
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            uses += [f"{ast.unparse(t)} = ..." for t in targets if isinstance(t, ast.Attribute) and root(t) in foreign]
    return uses


LIBRARIES = {"verl", "ray", "vllm"}


def test_the_scan_finds_what_it_looks_for():
    found = foreign_uses(
        "from verl.workers import engine_workers as ew\nimport ray\n"
        "ew.ActorRolloutRefWorker.actor_worker_cls = 1\nray._private.state\nx._y = 2\n"
    )
    assert sorted(found) == ["ew.ActorRolloutRefWorker.actor_worker_cls = ...", "ray._private"]


def test_no_other_module_touches_a_private_name_of_verl_ray_or_vllm():
    """Outside compat.py, no module reads or writes a private attribute of verl, Ray or vLLM,
    or assigns to any of their attributes (the monkeypatches go through compat's functions)."""
    found = []
    for directory, _, names in os.walk(ROOT):
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith(".py") and not path.endswith("compat.py"):
                found += [f"{os.path.relpath(path, ROOT)}: {use}" for use in foreign_uses(open(path).read())]
    assert not found, found
