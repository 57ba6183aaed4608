"""What a browser's owner keeps on the server: uploads within a quota and an age limit, and the setup."""

from __future__ import annotations

import json
import os
import time

import pytest

from ea_core.errors import ConfigError, DataError
from ea_core.uploads import OwnerStore, StoreLimits, safe_name


def _file(path, size: int = 1000, byte: bytes = b"x"):
    path.write_bytes(byte * size)
    return path


def test_an_upload_is_the_owners_kept_across_stores_and_invisible_to_others(tmp_path):
    runs = tmp_path / "runs"
    alice = OwnerStore(runs, "alice-token")
    kept = alice.add(_file(tmp_path / "reviews.csv"), move=True)
    assert kept.name == "reviews.csv" and not (tmp_path / "reviews.csv").exists()
    again = OwnerStore(runs, "alice-token")  # a reload, a restarted server: the same owner's store
    assert [f.name for f in again.files()] == ["reviews.csv"] and again.path("reviews.csv").read_bytes() == b"x" * 1000
    bob = OwnerStore(runs, "bob-token")
    assert bob.files() == [] and bob.find("reviews.csv") is None
    with pytest.raises(DataError, match="no longer on this server"):
        bob.path("reviews.csv")
    assert "alice-token" not in str(kept.path)  # folders are named by a hash of the token


def test_names_never_leave_the_store(tmp_path):
    store = OwnerStore(tmp_path / "runs", "o")
    assert safe_name("../../etc/passwd") == "passwd" and safe_name(".hidden") == "hidden"
    assert safe_name("C:\\data\\my file (2).csv") == "my file (2).csv"
    store.add(_file(tmp_path / "a.csv"))
    for bad in ("../a.csv", "/etc/passwd", "", None, ".incoming-1-a.csv"):
        assert store.find(bad) is None
    with pytest.raises(ConfigError, match="still starting"):
        OwnerStore(tmp_path / "runs", "")


def test_the_quota_refuses_what_does_not_fit_and_a_replacement_counts_once(tmp_path):
    store = OwnerStore(tmp_path / "runs", "o", StoreLimits(quota_mb=3000 / 2**20))
    store.add(_file(tmp_path / "one.csv", 2000))
    assert store.usage() == 2000 and "of 2.9 kB used" in store.describe_usage()
    with pytest.raises(DataError, match=r"two.csv \(1.5 kB\) does not fit.*Remove a file"):
        store.add(_file(tmp_path / "two.csv", 1500))
    assert [f.name for f in store.files()] == ["one.csv"]
    store.add(_file(tmp_path / "one.csv", 2500))  # the same name replaced: 2,500 bytes, not 4,500
    assert store.usage() == 2500
    assert store.remove("one.csv") and not store.remove("one.csv") and store.usage() == 0
    store.add(_file(tmp_path / "two.csv", 1500))


def test_files_unused_past_the_age_limit_are_removed_and_use_keeps_them(tmp_path):
    store = OwnerStore(tmp_path / "runs", "o", StoreLimits(max_age_days=1))
    old, fresh = store.add(_file(tmp_path / "old.csv")), store.add(_file(tmp_path / "fresh.csv"))
    two_days_ago = time.time() - 2 * 86400
    os.utime(old.path, (two_days_ago, two_days_ago))
    os.utime(fresh.path, (two_days_ago, two_days_ago))
    store.path("fresh.csv")  # used now: its age starts again
    assert [f.name for f in store.files()] == ["fresh.csv"] and not old.path.exists()
    assert "for 1 days after their last use, up to 1 GB per browser" in store.limits.describe()
    assert "until you remove them" in StoreLimits(0, 0).describe()
    with pytest.raises(ConfigError):
        StoreLimits(quota_mb=-1)


def test_keep_reuses_an_identical_file_and_never_overwrites_another(tmp_path):
    store = OwnerStore(tmp_path / "runs", "o")
    store.add(_file(tmp_path / "data.csv", byte=b"a"))
    (tmp_path / "run-input").mkdir()
    copy = _file(tmp_path / "run-input" / "data.csv", byte=b"a")
    assert store.keep(copy).name == "data.csv" and len(store.files()) == 1
    other = _file(tmp_path / "run-input" / "data.csv", byte=b"b")
    kept = store.keep(other)
    assert kept.name == "data-2.csv" and store.path("data.csv").read_bytes() == b"a" * 1000


def test_the_setup_never_keeps_a_key(tmp_path):
    store = OwnerStore(tmp_path / "runs", "o")
    assert store.load_setup() is None
    store.save_setup({"source": "file", "data_file": "reviews.csv", "api_key": "sk-SECRET-1234",
                      "base_url": "https://user:sk-INURL-5678@api.example.com:8443/v1", "ssm": ["tfidf"]})
    saved = store.load_setup()
    assert saved == {"source": "file", "data_file": "reviews.csv", "base_url": "https://api.example.com:8443/v1",
                     "ssm": ["tfidf"]}
    raw = json.dumps(saved) + (store.folder / "setup.json").read_text()
    assert "SECRET" not in raw and "INURL" not in raw
    (store.folder / "setup.json").write_text("not json")
    assert store.load_setup() is None


def test_an_upload_counts_in_the_disk_quota_of_runs_and_uploads(tmp_path):
    """With --disk-quota-mb, what one owner's runs take leaves less room for uploads (and the reverse)."""
    from ea_core.quotas import DiskQuota
    from ea_core.runfolder import write_json
    from ea_core.runs import owner_hash
    from pages.session import Studio

    studio = Studio(tmp_path / "runs", StoreLimits(quota_mb=10), quota=DiskQuota(per_owner_mb=1))
    run = tmp_path / "runs" / "alice-run-0123456789ab"
    run.mkdir(parents=True)
    write_json(run / "status.json", {"run_id": run.name, "owner": owner_hash("alice"), "state": "done"})
    _file(run / "model.bin", 800 * 1024)  # alice's run takes 800 KB of her 1 MB
    with pytest.raises(DataError, match="runs and uploads would take 1 MB, over the 1 MB this server allows"):
        studio.store("alice").add(_file(tmp_path / "big.csv", 300 * 1024))
    assert studio.store("alice").files() == []
    studio.store("alice").add(_file(tmp_path / "small.csv", 100 * 1024))  # fits beside the run
    studio.store("bob").add(_file(tmp_path / "big.csv", 300 * 1024))  # bob has no run: room for it
    assert "Disk: 900 KB of 1 MB" in studio.manager.quota.describe(studio.manager.disk_use("alice"))
