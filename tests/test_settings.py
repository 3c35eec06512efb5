"""Layered settings: defaults < root ddmq.yaml < queue ddmq.yaml < message."""

from __future__ import annotations

import os

import pytest
import yaml

import ddmq
from ddmq.settings import DEFAULTS


def write_yaml(path, values):
    with open(path, "w") as handle:
        yaml.safe_dump(values, handle)


def test_layering(b):
    assert b.get_settings("q")["priority"] == DEFAULTS["priority"] == 999
    b.update_settings_file("", {"priority": 50, "message_timeout": 30})
    b.create_queue("other")
    b.update_settings_file("q", {"priority": 5})
    assert b.get_settings("q")["priority"] == 5
    assert b.get_settings("q")["message_timeout"] == 30
    assert b.get_settings("other")["priority"] == 50
    assert b.publish("q", "x").priority == 5
    assert b.publish("q", "x", priority=0).priority == 0
    assert b.publish("other", "x").priority == 50


def test_new_queue_does_not_freeze_root_values(b):
    b.create_queue("later")
    assert b.get_config_file("later") == {}
    b.update_settings_file("", {"message_timeout": 42})
    assert b.get_settings("later")["message_timeout"] == 42


def test_changes_by_another_process_are_picked_up(b):
    assert b.get_settings("q")["message_timeout"] == 600
    write_yaml(os.path.join(b.root, "q", "ddmq.yaml"), {"message_timeout": 7})
    other = ddmq.broker(b.root)
    assert other.get_settings("q")["message_timeout"] == 7
    # b sees it too once its cached copy is re-checked (at most a second later).
    import time
    deadline = time.monotonic() + 5
    while b.get_settings("q")["message_timeout"] != 7:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_message_timeout_setting_sets_lease(b):
    b.update_settings_file("q", {"message_timeout": 100})
    b.publish("q", "x")
    b.publish("q", "y", timeout=1000)
    first, second = b.consume("q", n=2)
    now = b.clock.now()
    assert 98 <= first.expiry - now <= 101
    assert 998 <= second.expiry - now <= 1001


def test_requeue_setting_applies_to_messages_that_left_it_open(b):
    b.update_settings_file("q", {"requeue": False})
    b.publish("q", "x")
    b.nack(b.consume("q"))
    assert b.get_message_list("q") == ([], [])
    b.publish("q", "y", requeue=True)
    b.nack(b.consume("q"))
    assert b.consume("q").message == "y"


@pytest.mark.parametrize("text", ["priority: [", "- a list", "priority: high", "requeue: maybe",
                                  "message_timeout: 0", "requeue_limit: -2"])
def test_invalid_settings_files_raise_settings_error(b, text):
    with open(os.path.join(b.root, "q", "ddmq.yaml"), "w") as handle:
        handle.write(text)
    with pytest.raises(ddmq.SettingsError):
        ddmq.broker(b.root).publish("q", "x")


def test_update_rejects_invalid_values_and_keeps_file(b):
    path = os.path.join(b.root, "q", "ddmq.yaml")
    before = open(path).read()
    with pytest.raises(ddmq.SettingsError):
        b.update_settings_file("q", {"priority": -3})
    assert open(path).read() == before


def test_settings_written_atomically_and_housekeeping_does_not_rewrite(b):
    path = os.path.join(b.root, "q", "ddmq.yaml")
    before = os.stat(path)
    for i in range(50):
        b.publish("q", i)
        b.ack(b.consume("q"))
    b.clean("q", force=True)
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    b.update_settings_file("q", {"requeue_limit": 3})
    assert yaml.safe_load(open(path)) == {"requeue_limit": 3}
    assert [n for n in os.listdir(os.path.join(b.root, "q")) if "tmp-" in n] == []
