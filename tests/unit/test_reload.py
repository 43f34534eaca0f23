"""proxy.reload.plan_reload: which keys a reload applies, which need a restart, and the settings it runs with."""

from __future__ import annotations

from pathlib import Path

from proxy.config import Address, AdminSettings, ForwardSettings, LogSettings, SentrySettings, Settings
from proxy.reload import RESTART_KEYS, ConfigSource, plan_reload

RUNNING = Settings(
    forward=ForwardSettings(listen=Address("127.0.0.1", 3128), workers=2, idle_timeout=30.0),
    sentry=SentrySettings(traces_sample_rate=1.0),
)


def test_nothing_changed() -> None:
    plan = plan_reload(RUNNING, RUNNING)
    assert (plan.applied, plan.needs_restart) == ((), ())
    assert plan.settings == RUNNING


def test_sampling_targets_dsn_timeouts_and_logs_apply() -> None:
    loaded = RUNNING.model_copy(
        update={
            "sentry": SentrySettings(
                traces_sample_rate=0.0,
                trace_propagation_targets=("internal",),
                dsn="https://k@o1.ingest.sentry.io/2",
            ),
            "forward": RUNNING.forward.model_copy(
                update={"idle_timeout": 5.0, "connect_timeout": 1.0, "header_timeout": 2.0, "shutdown_grace": 3.0}
            ),
            "log": LogSettings(format="json", access=True),
        }
    )
    plan = plan_reload(RUNNING, loaded)
    assert plan.settings == loaded
    assert plan.needs_restart == ()
    assert set(plan.applied) == {
        "sentry.traces_sample_rate",
        "sentry.trace_propagation_targets",
        "sentry.dsn",
        "forward.idle_timeout",
        "forward.connect_timeout",
        "forward.header_timeout",
        "forward.shutdown_grace",
        "log.format",
        "log.access",
    }


def test_restart_keys_keep_their_running_values_while_the_rest_applies() -> None:
    loaded = Settings(
        forward=ForwardSettings(
            listen=Address("0.0.0.0", 8080),
            workers=4,
            idle_timeout=30.0,
            max_connections=5,
            splice_bodies=False,
            connect_ports=(443, 8443),
        ),
        sentry=SentrySettings(traces_sample_rate=0.5),
        admin=AdminSettings(listen=None),
    )
    plan = plan_reload(RUNNING, loaded)
    assert plan.applied == ("forward.connect_ports", "sentry.traces_sample_rate")
    assert plan.needs_restart == (
        'forward.listen: "127.0.0.1:3128" -> "0.0.0.0:8080"',
        "forward.workers: 2 -> 4",
        "forward.splice_bodies: true -> false",
        "forward.max_connections: 10000 -> 5",
        'admin.listen: "127.0.0.1:9901" -> "" (none)',
    )
    expected = RUNNING.model_copy(
        update={
            "forward": RUNNING.forward.model_copy(update={"connect_ports": (443, 8443)}),
            "sentry": SentrySettings(traces_sample_rate=0.5),
        }
    )
    assert plan.settings == expected


def test_restart_keys_are_the_bound_and_forked_ones() -> None:
    assert {"forward.listen", "forward.workers", "admin.listen"} <= RESTART_KEYS
    every = {f"{s}.{k}" for s in Settings.model_fields for k in type(getattr(Settings(), s)).model_fields}
    assert every >= RESTART_KEYS


def test_a_restart_key_set_back_is_no_change() -> None:
    """After a reload kept the old listen address, reading the original file again changes nothing."""
    moved = RUNNING.model_copy(update={"forward": RUNNING.forward.model_copy(update={"workers": 8})})
    first = plan_reload(RUNNING, moved)
    assert first.settings == RUNNING and first.needs_restart
    assert plan_reload(RUNNING, RUNNING).needs_restart == ()


def test_config_source_reports_problems(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[sentry]\ntraces_sample_rate = 2.0\n[forward]\nbogus = 1\n")
    problems = ConfigSource(path, {}).try_load()
    assert isinstance(problems, list)
    assert sorted(p.partition(":")[0] for p in problems) == ["forward.bogus", "sentry.traces_sample_rate"]
    path.write_text("[sentry]\ntraces_sample_rate = 0.5\n")
    loaded = ConfigSource(path, {"TRACE_PROXY_LOG__ACCESS": "true"}).try_load()
    assert not isinstance(loaded, list)
    assert loaded.settings.sentry.traces_sample_rate == 0.5 and loaded.settings.log.access is True
