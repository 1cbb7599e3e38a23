"""torchqsm bench: runs on the small suite, the cache (resume after an interrupt, stale keys,
failures), the tables, the figures and the offline HTML page, the command line."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from html.parser import HTMLParser

import pytest
import torch

from torchqsm.bench import build_suite, run_bench, write_report
from torchqsm.bench.runs import run_file_stem
from torchqsm.bench.tables import COLUMNS, TIMING_COLUMNS, csv_text, run_anchor
from torchqsm.cli.main import main
from torchqsm.errors import InputError, ParameterError

CASES = ("baseline", "tilt-30deg", "snr-30")
METHODS = ("tkd", "tikhonov", "tv:max_iterations=5", "cosmos")  # cosmos needs several orientations: it fails


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    build_suite(root, small=True, cases=CASES)
    return root


@pytest.fixture(scope="module")
def full(suite, tmp_path_factory):
    """One uninterrupted serial bench and its report."""
    out = tmp_path_factory.mktemp("full")
    result = run_bench(suite, out, METHODS, workers=1)
    return result, write_report(result)


def accuracy_csv(records) -> str:
    """The CSV without the columns that differ between two computations of the same run."""
    return csv_text(records, [c for c in COLUMNS if c not in TIMING_COLUMNS])


def test_every_method_on_every_case_scored(full):
    result, _ = full
    assert [(r["case"], r["method"]) for r in result.records] == [(c, m) for c in CASES for m in METHODS]
    assert len(result.computed) == 12 and not result.reused
    for record in result.records:
        if record["method"] == "cosmos":
            assert record["status"] == "failed" and "4-D" in record["error"] and "\n" not in record["error"]
            continue
        assert record["status"] == "ok", record.get("error")
        assert 10.0 < record["nrmse"] < 100.0 and abs(record["nrmse_demeaned"] - record["nrmse"]) < 5.0
        assert 0.0 < record["ssim"] < 1.0 and 0.0 < record["pearson"] < 1.0 and math.isfinite(record["psnr"])
        assert 0.3 < record["roi_slope"] < 1.2 and len(record["roi"]) > 5
        assert record["seconds"] > 0 and record["peak_memory_mib"] > 10
    by = {(r["case"], r["method"]): r for r in result.records}
    # Noise hurts TKD: SNR 30 scores worse than the baseline (measured: 77 % vs 52 %).
    assert by["snr-30", "tkd"]["nrmse"] > by["baseline", "tkd"]["nrmse"] + 10


def test_tables_and_figures_written(full):
    result, files = full
    rows = list(csv.DictReader(io.StringIO(files.csv.read_text())))
    assert len(rows) == 12 and rows[0].keys() == set(COLUMNS)
    assert {r["status"] for r in rows if r["method"] == "cosmos"} == {"failed"}
    markdown = files.markdown.read_text()
    assert "| NRMSE (%) | baseline | tilt-30deg | snr-30 | mean |" in markdown
    assert "| cosmos | failed | failed | failed | — |" in markdown and "## Failed runs" in markdown
    figures = result.report_dir / "figures"
    expected = {figures / run_file_stem(c) / "slices.png" for c in CASES}
    expected |= {figures / run_file_stem(c) / f"{run_file_stem(m)}.png" for c in CASES for m in METHODS[:3]}
    expected |= {figures / "nrmse_vs_tilt.png", figures / "nrmse_vs_snr.png", figures / "runtime_vs_nrmse.png"}
    assert set(files.figures) == expected
    for path in expected:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.ids: set[str] = set()
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        self.images += tag == "img"
        for name in ("src", "href", "srcset", "action", "data"):
            if attributes.get(name) is not None:
                self.references.append(attributes[name])


def test_html_is_offline_and_links_every_row(full):
    result, files = full
    text = files.html.read_text(encoding="utf-8")
    page = _Links()
    page.feed(text)
    assert page.images == len(files.figures)
    for reference in page.references:
        assert reference.startswith(("data:image/png;base64,", "#")), reference
        if reference.startswith("#"):
            assert reference[1:] in page.ids, f"dangling link {reference}"
    assert "http:" not in text and "https:" not in text and "url(" not in text and "@import" not in text
    assert "<link" not in text and "<script" not in text
    for record in result.records:
        assert f'href="#{run_anchor(record["case"], record["method"])}"' in text
        assert run_anchor(record["case"], record["method"]) in page.ids


def test_interrupted_run_resumes_to_identical_tables(suite, full, tmp_path):
    """Stop the bench after 5 finished runs, rerun: only the 7 missing runs are computed."""
    finished = []

    def interrupt(record, computed):
        finished.append(record)
        if len(finished) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(suite, tmp_path, METHODS, workers=1, on_record=interrupt)
    assert len(list(tmp_path.glob("runs/*/*.json"))) == 5
    assert not list(tmp_path.rglob(".tmp-*"))  # nothing half-written
    resumed = run_bench(suite, tmp_path, METHODS, workers=1)
    assert len(resumed.computed) == 7 and len(resumed.reused) == 5
    assert accuracy_csv(resumed.records) == accuracy_csv(full[0].records)
    again = run_bench(suite, tmp_path, METHODS, workers=1)
    assert not again.computed and len(again.reused) == 12


def test_missing_or_stale_runs_are_recomputed(suite, full, tmp_path):
    shutil.copytree(full[0].report_dir / "runs", tmp_path / "runs")
    (tmp_path / "runs" / "baseline" / "tkd.json").unlink()
    (tmp_path / "runs" / "snr-30" / "tikhonov.npy").unlink()  # a record without its χ is not finished
    stale = tmp_path / "runs" / "tilt-30deg" / "tkd.json"
    stale.write_text(json.dumps(json.loads(stale.read_text()) | {"key": "0" * 64}))
    result = run_bench(suite, tmp_path, METHODS, workers=1)
    assert sorted(result.computed) == [("baseline", "tkd"), ("snr-30", "tikhonov"), ("tilt-30deg", "tkd")]
    assert accuracy_csv(result.records) == accuracy_csv(full[0].records)
    # A changed parameter value is a different run; a failed run is retried only when asked.
    changed = run_bench(suite, tmp_path, ["tkd:threshold=0.1"], cases=["baseline"], workers=1)
    assert changed.computed == [("baseline", "tkd:threshold=0.1")]
    assert changed.records[0]["nrmse"] != full[0].records[0]["nrmse"]
    retried = run_bench(suite, tmp_path, METHODS, workers=1, retry_failed=True)
    assert sorted(retried.computed) == [(c, "cosmos") for c in sorted(CASES)]


def test_dask_workers_give_the_serial_results(suite, full, tmp_path):
    """Two local worker processes (the cluster's start dominates: ~5 s idle, ~20 s on a loaded machine)."""
    result = run_bench(suite, tmp_path, ["tkd", "cosmos"], workers=2)
    assert len(result.computed) == 6 and len(result.failed) == 3
    serial = [r for r in full[0].records if r["method"] in ("tkd", "cosmos")]
    assert accuracy_csv(result.records) == accuracy_csv(serial)


def test_one_case_folder_is_a_dataset(suite, full, tmp_path):
    result = run_bench(suite / "baseline", tmp_path, ["tkd"], workers=1)
    assert [(r["case"], r["status"]) for r in result.records] == [("baseline", "ok")]
    assert result.records[0]["nrmse"] == full[0].records[0]["nrmse"]


def test_user_errors(suite, tmp_path):
    with pytest.raises(ParameterError, match="unknown method 'nope'"):
        run_bench(suite, tmp_path, ["nope"])
    with pytest.raises(ParameterError, match="threshold"):
        run_bench(suite, tmp_path, ["tkd:threshold=-1"])
    with pytest.raises(ParameterError, match="no case matches"):
        run_bench(suite, tmp_path, ["tkd"], cases=["res-*"])
    with pytest.raises(InputError, match="not an evaluation suite"):
        run_bench(tmp_path, tmp_path / "out", ["tkd"])


def test_cli_bench(suite, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["bench", str(suite), "-o", str(out), "--methods", "tkd", "cosmos", "--cases", "base*", "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 runs (2 computed, 0 reused, 1 failed)" in captured.out and "index.html" in captured.out
    assert "baseline cosmos: FAILED" in captured.err
    assert (out / "index.html").is_file() and (out / "results.csv").is_file()
    assert main([*argv, "--quiet", "--no-figures"]) == 0
    assert "2 runs (0 computed, 2 reused, 1 failed)" in capsys.readouterr().out
    assert main(["bench", str(suite), "-o", str(out), "--methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["bench", str(suite), "-o", str(out), "--workers", "0", "--methods", "tkd"]) == 2
    assert main(["bench", str(suite), "-o", str(out), "--workers", "2", "--scheduler", "tcp://x:1"]) == 2


def test_records_hold_the_automatic_choices(suite, tmp_path):
    """An "auto" parameter's rule and value are in the record; a fixed value makes no choice."""
    result = run_bench(suite, tmp_path, ["tikhonov", "tikhonov:regularization=0.01"], cases=["baseline"], workers=1)
    auto, fixed = result.records
    (choice,) = auto["choices"]
    assert choice["parameter"] == "regularization" and "cross-validation" in choice["rule"]
    assert 1e-4 < choice["value"] < 1 and choice["value"] != 0.01
    assert fixed["choices"] == []


def test_labels_with_dots_get_their_own_files(suite, tmp_path):
    """Two values of one parameter (labels "…=0.1", "…=0.2") are two runs, not one file overwritten."""
    result = run_bench(suite, tmp_path, ["tkd:threshold=0.1", "tkd:threshold=0.2"], cases=["baseline"], workers=1)
    first, second = result.records
    assert first["nrmse"] != second["nrmse"]
    assert sorted(p.name for p in (tmp_path / "runs" / "baseline").glob("*.json")) == sorted(
        f"{run_file_stem(label)}.json" for label in ("tkd:threshold=0.1", "tkd:threshold=0.2"))
    again = run_bench(suite, tmp_path, ["tkd:threshold=0.1", "tkd:threshold=0.2"], cases=["baseline"], workers=1)
    assert again.computed == [] and [r["nrmse"] for r in again.records] == [first["nrmse"], second["nrmse"]]


def test_lesion_table_shows_the_truth():
    from torchqsm.bench.tables import metric_table

    records = [{"case": "haemorrhage", "method": m, "status": "ok", "lesion_mean": v, "lesion_mean_truth": 1.45}
               for m, v in (("tkd", 1.2), ("tv", 1.44))] + [
        {"case": "baseline", "method": "tkd", "status": "ok", "lesion_mean": None}]
    table = metric_table(records, "lesion_mean")
    assert table.splitlines()[-1] == "| *truth* | 1.450 | — | — |"
    assert "truth" not in metric_table(records, "nrmse")


def test_retrained_weights_under_the_same_name_are_another_run(tmp_path, monkeypatch):
    """The cache key holds the weights' SHA-256: a network retrained under its old name is run again."""
    from torchqsm.bench.runs import recipe_key, run_key
    from torchqsm.models import build_model
    from torchqsm.models import weights as weights_module
    from torchqsm.models.weights import example_card, save_weights
    from torchqsm.pipeline import learned, registry

    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    keys = []
    try:
        for seed in (0, 1):
            torch.manual_seed(seed)
            save_weights(build_model("unet", base_channels=2, depth=2),
                         example_card("unet-tiny", base_channels=2, depth=2), tmp_path, "unet-tiny", overwrite=True)
            save_weights(build_model("iqsm+", base_channels=2, depth=2),
                         example_card("iqsm-plus-tiny", architecture="iqsm+", base_channels=2, depth=2), tmp_path,
                         "iqsm-plus-tiny", overwrite=True)
            registry.register_learned()
            keys.append((run_key("case", "unet", {}, "cpu", "1.4"), recipe_key("case", "iqsm+", "cpu", "1.4")))
    finally:
        registry.METHODS.forget_learned()
        learned.load_cached.cache_clear()
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]
    assert run_key("case", "tkd", {}, "cpu", "1.4") == run_key("case", "tkd", {}, "cpu", "1.4")
