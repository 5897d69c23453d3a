"""The start-up hook (``llamafactory_kimi_audio.pth`` -> ``_startup.install``), checked in fresh interpreters.

Most tests use a fake ``llamafactory`` package plus a fake distribution declaring hooks in the same entry-point
group, both put first on ``PYTHONPATH``: they exercise the real ``.pth``, entry-point discovery and finder in a
fraction of a second and do not depend on the integration callbacks. Two tests import the real LLaMA-Factory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import llamafactory_kimi_audio
from llamafactory_kimi_audio import DISABLE_ENV
from llamafactory_kimi_audio._startup import STRICT_ENV
from llamafactory_kimi_audio.integration.hooks import ALL_HOOKS

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "llamafactory_kimi_audio"
HOOK_PREFIX = "llamafactory-kimi-audio:"

FAKE_FILES = {
    "llamafactory/__init__.py": 'import sys\nHOOKS_LOADED_FIRST = "fakehooks" in sys.modules\n',
    "llamafactory/target.py": "VALUE = 1\n",
    "llamafactory/later.py": "VALUE = 2\n",
    "fakehooks.py": """\
        import os


        class Hook:
            def __init__(self, module, action):
                self.module, self.action = module, action

            def __call__(self, module):
                self.action(module)


        def _mark(module):  # records the loader the module sees while its hook runs
            module.__dict__.setdefault("HOOKED", []).append(type(module.__loader__).__name__)


        def _boom(module):
            if os.environ.get("FAKE_BOOM"):
                raise RuntimeError("boom\\nsecond line")


        BOOM = Hook("llamafactory.target", _boom)
        MARK = Hook("llamafactory.target", _mark)
        LATER = Hook("llamafactory.later", _mark)
        ROOT = Hook("llamafactory", _mark)
        """,
    "fakehooks-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: fakehooks\nVersion: 0.1\n",
    "fakehooks-0.1.dist-info/entry_points.txt": """\
        [llamafactory_extensions]
        fake_boom = fakehooks:BOOM
        fake_mark = fakehooks:MARK
        fake_later = fakehooks:LATER
        fake_root = fakehooks:ROOT
        """,
}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_llamafactory")
    for name, text in FAKE_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def run(
    code: str | Path, *, env: dict[str, str] | None = None, path: Path | None = None, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (or a script file) in a fresh interpreter, without our variables unless ``env`` sets them."""
    clean = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, STRICT_ENV, "PYTHONPATH", "RANK")}
    clean.update(env or {})
    if path is not None:
        clean["PYTHONPATH"] = str(path)
    argv = [str(code)] if isinstance(code, Path) else ["-c", textwrap.dedent(code)]
    return subprocess.run([sys.executable, *flags, *argv], env=clean, capture_output=True, text=True, timeout=120)


def last_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_startup_files_installed_in_site_packages():
    site_packages = Path(sysconfig.get_path("purelib"))
    for name in (f"{PACKAGE}.pth", f"{PACKAGE}.start"):
        installed = site_packages / name
        assert installed.is_file(), f"{installed} missing: pip install -e {REPO}"
        assert installed.read_text() == (REPO / name).read_text(), f"{installed} is stale: reinstall the package"
    pth_lines = (REPO / f"{PACKAGE}.pth").read_text().splitlines()
    assert len(pth_lines) == 1 and pth_lines[0].startswith("import ")  # site.py runs only lines starting so
    assert (REPO / f"{PACKAGE}.start").read_text().split() == [f"{PACKAGE}._startup:install"]


def test_interpreter_start_adds_only_the_finder():
    code = """\
        import json, sys
        import llamafactory_kimi_audio._startup as s
        print(json.dumps({"modules": sorted(sys.modules), "first_finder": repr(sys.meta_path[0]),
                          "hooks": s.registered_hooks()}))
        """
    bare = run("import json, sys; print(json.dumps(sorted(sys.modules)))", flags=("-S",))
    on, off = last_json(run(code)), last_json(run(code, env={DISABLE_ENV: "TRUE"}))
    # `from __future__ import annotations` (in these modules) imports the tiny stdlib module __future__; the .pth
    # blocks SIGINT with the builtin _signal while the package imports (see test_pth_delivers_a_real_ctrl_c...).
    ours = {"__future__", "_signal", PACKAGE, f"{PACKAGE}._startup", f"{PACKAGE}.settings"}
    assert not {m for m in on["modules"] if "kimi" in m or m == "llamafactory"} - ours
    assert set(on["modules"]) == set(off["modules"])
    assert {m for m in set(on["modules"]) - set(last_json(bare)) if "kimi" in m} == ours - {"__future__", "_signal"}
    assert on["first_finder"] == off["first_finder"] == f"<{PACKAGE}._startup._Finder>"
    # entry points are read when llamafactory is first imported; the native routing of transformers' Auto classes
    # waits for their modules (``import llamafactory_kimi_audio`` is all plain transformers code needs)
    modules = llamafactory_kimi_audio.AUTO_CLASS_MODULES
    assert on["hooks"] == {f"kimi_audio_native_{module.rsplit('.', 1)[1]}": module for module in modules}
    assert off["hooks"] == {"kimi_audio_opt_out_notice": "llamafactory.train.tuner"}  # opted out: the notice only


def test_pth_of_a_half_uninstalled_package_is_silent(tmp_path: Path):
    (tmp_path / f"{PACKAGE}.pth").write_text((REPO / f"{PACKAGE}.pth").read_text())
    code = f"import site, sys; site.addsitedir({str(tmp_path)!r}); print([m for m in sys.modules if 'kimi' in m])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a PYTHONPATH may hold the checkout
    result = subprocess.run(  # -S, no PYTHONPATH and another cwd: the package cannot be imported
        [sys.executable, "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("raised", ["SystemExit(3)", "KeyboardInterrupt()", "GeneratorExit()", "ImportError('x')"])
def test_pth_survives_base_exceptions(tmp_path: Path, raised: str):
    """A package that raises anything while it imports (a broken install, a stray sys.exit) must not kill every
    interpreter of the environment at start-up; the interpreter runs on without the integration."""
    site_dir, shadow = tmp_path / "site", tmp_path / "shadow" / PACKAGE
    site_dir.mkdir()
    shadow.mkdir(parents=True)
    (site_dir / f"{PACKAGE}.pth").write_text((REPO / f"{PACKAGE}.pth").read_text())
    (shadow / "__init__.py").write_text(f"raise {raised}\n")
    ours = "[m for m in sys.modules if 'kimi' in m]"
    code = f"import site, sys; site.addsitedir({str(site_dir)!r}); print('alive', {ours})"
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    env["PYTHONPATH"] = str(shadow.parent)
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "alive []\n", "")


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so that Python installs its KeyboardInterrupt handler
    even when the shell that started pytest ignores SIGINT (``nohup … &``, ``trap '' INT``): an ignored disposition
    is inherited across exec, and the test must not depend on its parent's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_pth_delivers_a_real_ctrl_c_after_the_import(tmp_path: Path):
    """SIGINT is blocked only while the package imports: a real Ctrl-C that lands then is delivered right after, so
    it is not swallowed with the exceptions that the import itself raises."""
    site_dir, shadow = tmp_path / "site", tmp_path / "shadow" / PACKAGE
    site_dir.mkdir()
    shadow.mkdir(parents=True)
    (site_dir / f"{PACKAGE}.pth").write_text((REPO / f"{PACKAGE}.pth").read_text())
    (shadow / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    code = f"import site; site.addsitedir({str(site_dir)!r}); print('not reached')"
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    env["PYTHONPATH"] = str(shadow.parent)
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_default_sigint,
    )
    assert "KeyboardInterrupt" in result.stderr and "not reached" not in result.stdout
    assert result.returncode != 0


def test_opt_out_turns_the_hooks_off(fake: Path):
    code = """\
        import json
        import llamafactory.target as target
        import llamafactory_kimi_audio._startup as s
        print(json.dumps([hasattr(target, "HOOKED"), s.registered_hooks(), s.applied_hooks()]))
        """
    result = run(code, env={DISABLE_ENV: "1"}, path=fake)
    assert last_json(result) == [False, {"kimi_audio_opt_out_notice": "llamafactory.train.tuner"}, []]
    assert result.stderr == ""


def test_hooks_run_after_their_module_and_failures_warn_once(fake: Path):
    result = run(
        """\
        import importlib, inspect, json, sys
        import llamafactory_kimi_audio._startup as s

        loaded_at_start = "fakehooks" in sys.modules
        import llamafactory, llamafactory.target as target

        s.install(); s.install()
        importlib.reload(target)  # hooks run at most once per process
        print(json.dumps({
            "loaded_at_start": loaded_at_start,
            "loaded_before_init": llamafactory.HOOKS_LOADED_FIRST,
            "root": llamafactory.HOOKED,
            "target": target.HOOKED,
            "loader": type(target.__loader__).__name__,
            "same_loader": target.__spec__.loader is target.__loader__,
            "source": "VALUE = 1" in inspect.getsource(target),
            "finders": sum(f is s._FINDER for f in sys.meta_path),
            "applied": s.applied_hooks(),
            "failed": s.failed_hooks(),
            "waiting": s.registered_hooks()["fake_later"],
        }))
        """,
        env={"FAKE_BOOM": "1"},
        path=fake,
    )
    out = last_json(result)
    assert out["loaded_at_start"] is False and out["loaded_before_init"] is True
    assert out["root"] == out["target"] == ["SourceFileLoader"]
    assert out["loader"] == "SourceFileLoader" and out["same_loader"] and out["source"]
    assert out["finders"] == 1
    assert out["applied"] == ["fake_root", "fake_mark"]
    assert out["failed"] == {"fake_boom": "RuntimeError: boom second line"}
    assert out["waiting"] == "llamafactory.later"
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(HOOK_PREFIX)
    for part in ("'fake_boom'", "llamafactory.target", "RuntimeError: boom second line", f"{DISABLE_ENV}=1"):
        assert part in warning


def test_unloadable_hooks_warn_once_per_error(tmp_path: Path):
    (tmp_path / "llamafactory").mkdir()
    (tmp_path / "llamafactory" / "__init__.py").write_text("")
    (tmp_path / "bad-0.1.dist-info").mkdir()
    (tmp_path / "bad-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: bad\nVersion: 0.1\n")
    entry_points = "[llamafactory_extensions]\nbad_a = nosuchmod:A\nbad_b = nosuchmod:B\nbad_c = os:sep\n"
    (tmp_path / "bad-0.1.dist-info" / "entry_points.txt").write_text(entry_points)
    result = run("import llamafactory; import llamafactory_kimi_audio._startup as s; print('ok')", path=tmp_path)
    assert result.returncode == 0 and result.stdout == "ok\n"
    first, second = result.stderr.splitlines()
    assert "hook(s) bad_a, bad_b failed (ModuleNotFoundError: No module named 'nosuchmod')" in first
    assert "hook(s) bad_c failed (TypeError: os:sep is not a hook" in second


def test_strict_mode_raises(fake: Path):
    result = run("import llamafactory.target", env={"FAKE_BOOM": "1", STRICT_ENV: "1"}, path=fake)
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stderr and HOOK_PREFIX not in result.stderr


def test_opt_out_then_activate_now(fake: Path):
    out = last_json(
        run(
            """\
            import json, sys
            import llamafactory.target as target

            before = {"hooked": hasattr(target, "HOOKED"), "fakehooks": "fakehooks" in sys.modules}
            import llamafactory_kimi_audio
            import llamafactory_kimi_audio._startup as s

            llamafactory_kimi_audio.activate()  # an explicit opt-in: ignores the opt-out variable
            llamafactory_kimi_audio.activate()
            import llamafactory.later as later
            print(json.dumps({"before": before, "target": target.HOOKED, "later": later.HOOKED,
                              "applied": s.applied_hooks()}))
            """,
            env={DISABLE_ENV: "1"},
            path=fake,
        )
    )
    assert out["before"] == {"hooked": False, "fakehooks": False}  # opted out: no entry point was even loaded
    assert out["target"] == out["later"] == ["SourceFileLoader"]
    assert out["applied"] == ["fake_boom", "fake_mark", "fake_root", "fake_later"]


def test_no_site_no_hooks(fake: Path):
    out = last_json(
        run(
            """\
            import json, sys
            import llamafactory.target as target
            print(json.dumps([hasattr(target, "HOOKED"), [m for m in sys.modules if "kimi" in m]]))
            """,
            path=fake,
            flags=("-S",),
        )
    )
    assert out == [False, []]


def test_spawn_children_get_hooks(fake: Path, tmp_path: Path):
    script = tmp_path / "spawn_child.py"
    script.write_text(
        textwrap.dedent(
            """\
            import json, multiprocessing


            def child():
                import llamafactory.target as target
                import llamafactory_kimi_audio._startup as s

                return [target.HOOKED, s.applied_hooks()]


            if __name__ == "__main__":
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    print(json.dumps(pool.apply(child)))
            """
        )
    )
    assert last_json(run(script, path=fake)) == [["SourceFileLoader"], ["fake_root", "fake_boom", "fake_mark"]]


def test_real_llamafactory_runs_the_hooks_of_imported_modules():
    from importlib.metadata import entry_points

    from llamafactory_kimi_audio.integration.hooks import DEFERRED
    from llamafactory_kimi_audio.integration.patches import triggers

    declared = {ep.name: ep.load().module for ep in entry_points(group="llamafactory_extensions")}
    assert set(declared.values()) == {hook.module for hook in ALL_HOOKS}
    assert set(declared.values()) | set(DEFERRED) == set(triggers())
    out = last_json(
        run(
            """\
            import json, sys
            import llamafactory.data.template
            import llamafactory_kimi_audio._startup as s

            hooks = s.registered_hooks()
            print(json.dumps({"registered": hooks, "imported": sorted(n for n, m in hooks.items() if m in sys.modules),
                              "ran": sorted({*s.applied_hooks(), *s.failed_hooks()})}))
            """,
            path=Path(__file__).resolve().parents[2],  # this checkout's package (a worktree's, not the installed one)
        )
    )
    deferred = {name: module for name, module in out["registered"].items() if ":" in name}  # Hook.deferred
    native = {name for name in out["registered"] if name.startswith("kimi_audio_native_")}  # transformers' Auto
    kept = {name: module for name, module in out["registered"].items() if name not in deferred and name not in native}
    assert kept == declared
    assert set(deferred.values()) == set(DEFERRED)  # registered along with the entry points, before any import
    assert {"kimi_audio_models", "kimi_audio_plugin", "kimi_audio_template"} <= set(out["imported"])
    assert out["ran"] == out["imported"]  # applied or failed: this test does not depend on the callbacks


def test_torchrun_child_gets_hooks(fake: Path, tmp_path: Path):
    """The path ``llamafactory-cli train`` takes with several devices (fake package: torchrun alone costs seconds)."""
    script = tmp_path / "torchrun_child.py"
    script.write_text(
        "import json, llamafactory.target as t, llamafactory_kimi_audio._startup as s\n"
        "print(json.dumps([t.HOOKED, s.applied_hooks()]))\n"
    )
    argv = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(script)]
    env = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, STRICT_ENV, "RANK")}
    env["PYTHONPATH"] = str(fake)
    try:
        result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("torchrun took longer than 60 s")
    assert last_json(result) == [["SourceFileLoader"], ["fake_root", "fake_boom", "fake_mark"]]


def test_our_plugin_module_imported_before_llamafactory_still_registers():
    """``import llamafactory_kimi_audio.integration.mm_plugin`` first: the hooks that need that half-imported module
    wait for it instead of failing, so ``kimi_audio`` is registered, silently; ``activate()`` retries failures."""
    result = run(
        """\
        import json
        import llamafactory_kimi_audio.integration.mm_plugin as ours
        import llamafactory.data.template as T
        from llamafactory.data.mm_plugin import PLUGINS
        import llamafactory_kimi_audio, llamafactory_kimi_audio._startup as s

        llamafactory_kimi_audio.activate()
        print(json.dumps({"template": "kimi_audio" in T.TEMPLATES, "plugin": PLUGINS.get("kimi_audio") is
                          ours.KimiAudioPlugin, "failed": s.failed_hooks(), "applied": s.applied_hooks()}))
        """
    )
    out = last_json(result)
    assert out["template"] and out["plugin"] and out["failed"] == {}, result.stderr
    assert {"kimi_audio_plugin", "kimi_audio_template"} <= set(out["applied"])
    assert HOOK_PREFIX not in result.stderr


def test_activate_retries_a_failed_hook(fake: Path):
    result = run(
        """\
        import json, os
        os.environ["FAKE_BOOM"] = "1"
        import llamafactory.target
        import llamafactory_kimi_audio, llamafactory_kimi_audio._startup as s

        failed = s.failed_hooks()
        del os.environ["FAKE_BOOM"]
        llamafactory_kimi_audio.activate()
        print(json.dumps([list(failed), s.failed_hooks(), s.applied_hooks()]))
        """,
        path=fake,
    )
    assert last_json(result) == [["fake_boom"], {}, ["fake_root", "fake_mark", "fake_boom"]]
