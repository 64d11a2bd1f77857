"""The output folder: one place for generated files, checked for writability safely."""

import concurrent.futures

from distill import paths


def test_concurrent_writability_checks_do_not_race(tmp_path, monkeypatch):
    # The driver's set-up and baseline threads and every trial call output_root() at
    # once; a fixed probe name let one caller delete another's probe (FileNotFoundError
    # reported as "not writable"), which killed a benchmark run.
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        roots = list(pool.map(lambda _: paths.output_root(), range(400)))
    assert set(roots) == {tmp_path.resolve()}
    assert list(tmp_path.iterdir()) == []  # no probe left behind
