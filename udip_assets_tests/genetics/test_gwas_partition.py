"""One GWAS partition as files in, files out (what a cluster worker runs): the same outputs in any
process, and a worker killed with SIGKILL part-way leaves the previous complete files, never torn ones;
its re-run gives the result of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from udip_assets.genetics.genotype_stream import PlinkSource
from udip_assets.genetics.gwas import GwasConfig, scan_associations
from udip_assets.genetics.gwas_partition import OUTPUT_FILES, run_partition, write_partition_inputs
from udip_assets.genetics.plink import write_plink


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    """2,000 subjects x 12,000 SNPs x 16 dims, 3 covariates, one planted association."""
    root = tmp_path_factory.mktemp("partition")
    rng = np.random.default_rng(8)
    n, m = 2000, 12000
    freq = rng.uniform(0.05, 0.5, m)
    dosage = rng.binomial(2, freq, size=(n, m)).astype(np.float64)
    iids = [f"s{k}" for k in range(n)]
    variants = pd.DataFrame({"snp": [f"rs{j}" for j in range(m)], "chrom": "1", "pos_bp": np.arange(m) * 50 + 1,
                             "a1": "A", "a2": "G"})
    write_plink(root / "g", iids, dosage, variants)
    pheno = pd.DataFrame(rng.standard_normal((n, 16)), index=iids, columns=[f"udip_{d:03d}" for d in range(16)])
    pheno["udip_003"] += 0.3 * dosage[:, 77]
    covar = pd.DataFrame(rng.standard_normal((n, 3)), index=iids, columns=["age", "sex", "pc1"])
    config = GwasConfig(chunk_variants=256, keep_p=1e-3)
    return root, pheno, covar, config


def _outputs(folder):
    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES}


def test_the_partition_equals_the_engine_on_the_same_inputs(partition, tmp_path):
    root, pheno, covar, config = partition
    write_partition_inputs(tmp_path, pheno, covar, config)
    summary = run_partition(tmp_path, root / "g", "1", log=lambda _: None)
    direct = scan_associations(PlinkSource(root / "g", sample_iids=list(pheno.index), chrom="1"), pheno, covar,
                               config)
    assert summary["n_variants"] == direct.n_variants == 12000 and summary["n_subjects"] == 2000
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "hits.parquet"), direct.hits)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "minp.parquet"), direct.minp)
    assert {"rs77"} <= set(direct.hits.loc[direct.hits["p"] < 1e-8, "snp"])


def test_a_worker_killed_mid_partition_leaves_the_previous_files_and_a_rerun_completes(partition, tmp_path):
    root, pheno, covar, config = partition
    reference = tmp_path / "reference"
    write_partition_inputs(reference, pheno, covar, config)
    run_partition(reference, root / "g", "1", log=lambda _: None)
    # an earlier complete run of the partition on other phenotypes: what a reader sees until the re-run ends
    work = tmp_path / "work"
    write_partition_inputs(work, pheno.iloc[:, ::-1].set_axis(pheno.columns, axis=1), covar, config)
    run_partition(work, root / "g", "1", log=lambda _: None)
    earlier = _outputs(work)
    write_partition_inputs(work, pheno, covar, config)
    victim = subprocess.Popen(
        [sys.executable, "-c", "import sys; from udip_assets.genetics.gwas_partition import run_partition; "
         "run_partition(sys.argv[1], sys.argv[2], '1')", str(work), str(root / "g")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    # kill it while it is writing the summary statistics (its temporary file exists)
    while not any(p.name.startswith(".sumstats.parquet.") for p in work.iterdir()):
        assert victim.poll() is None, victim.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert _outputs(work) == earlier  # nothing torn, nothing half-replaced
    run_partition(work, root / "g", "1", log=lambda _: None)
    for name in ("minp.parquet", "hits.parquet", "multivariate.parquet", "sumstats.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(work / name), pd.read_parquet(reference / name))
    np.testing.assert_array_equal(np.load(work / "t_histogram.npz")["t_histogram"],
                                  np.load(reference / "t_histogram.npz")["t_histogram"])
