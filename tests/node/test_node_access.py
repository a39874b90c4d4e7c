"""Association access control: calling AE, called AE, peer address; secure by default."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from pynetdicom import AE

from config.errors import ConfigError
from config.loader import load_config
from node.access import CALLED_AE_NOT_RECOGNISED, CALLING_AE_NOT_RECOGNISED, refusal

PEERS = [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]


def _associate_from(port: int, calling: str, called: str, source: str = "127.0.0.1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))


def test_unknown_calling_ae_is_rejected_with_a_log_line(node_factory, caplog) -> None:
    node = node_factory(peers=PEERS)
    with caplog.at_level(logging.INFO, logger="node"):
        assoc = _associate_from(node.port, "INTRUDER", "AINODE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == CALLING_AE_NOT_RECOGNISED
    assert "rejected: calling AE title 'INTRUDER' is not a listed peer" in caplog.text


def test_wrong_called_ae_is_rejected(node_factory, caplog) -> None:
    node = node_factory()
    with caplog.at_level(logging.INFO, logger="node"):
        assoc = _associate_from(node.port, "ANYONE", "NOTUS")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == CALLED_AE_NOT_RECOGNISED
    assert "called AE title 'NOTUS' is not ours" in caplog.text


def test_listed_peer_is_accepted_only_from_its_host(node_factory, caplog) -> None:
    node = node_factory(peers=PEERS)
    good = _associate_from(node.port, "ORTHANC", "AINODE")
    assert good.is_established
    assert good.send_c_echo().Status == 0
    good.release()
    with caplog.at_level(logging.INFO, logger="node"):
        forged = _associate_from(node.port, "ORTHANC", "AINODE", source="127.0.0.2")
    assert forged.is_rejected
    assert "connected from 127.0.0.2, not from its configured host 127.0.0.1" in caplog.text
    # the node keeps serving after refusals
    again = _associate_from(node.port, "ORTHANC", "AINODE")
    assert again.is_established
    again.release()


def test_address_check_can_be_turned_off(tools, tmp_path) -> None:
    config = load_config(
        tools.write_config(tmp_path, peers=PEERS, network={"verify_peer_address": False})
    )
    assert refusal(config, "ORTHANC", "AINODE", "127.0.0.2") is None
    assert refusal(config, "OTHER", "AINODE", "127.0.0.1") is not None


def test_any_caller_is_accepted_on_loopback_without_peers(tools, tmp_path) -> None:
    config = load_config(tools.write_config(tmp_path))
    assert config.accepts_any_calling_ae
    assert refusal(config, "WHOEVER", "AINODE", "127.0.0.1") is None


def test_non_loopback_bind_without_peers_refuses_to_start(tools, tmp_path) -> None:
    path = tools.write_config(tmp_path, bind="0.0.0.0")
    with pytest.raises(ConfigError, match="bind 0.0.0.0 is not loopback and peers is empty"):
        load_config(path)
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert str(path) in result.stderr and "peers" in result.stderr


def test_bad_value_names_file_key_and_value(tools, tmp_path) -> None:
    path = tools.write_config(tmp_path, completion={"idle_seconds": -1})
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: completion.idle_seconds = -1" in result.stderr


def test_too_many_associations_are_rejected_with_a_log_line(node_factory, caplog) -> None:
    node = node_factory(network={"maximum_associations": 1})
    first = _associate_from(node.port, "FIRST", "AINODE")
    assert first.is_established
    try:
        with caplog.at_level(logging.INFO, logger="node"):
            second = _associate_from(node.port, "SECOND", "AINODE")
        assert second.is_rejected
        assert "local limit exceeded: network.maximum_associations reached" in caplog.text
    finally:
        first.release()
