"""The gwas_sumstats view over the chromosomes' Parquet files, for a home whose path holds a quote and spaces."""

import pandas as pd

from udip_assets.defs.gwas import _register_sumstats_view, gwas_dir
from udip_assets.defs.resources import UdipHome
from udip_assets.store.warehouse import read_frame


def test_the_view_reads_every_chromosome_under_a_quoted_home(tmp_path):
    home = UdipHome(home=str(tmp_path / "O'Brien lab" / "udip home"))
    for chrom, n in (("6", 3), ("11", 2)):
        frame = pd.DataFrame({"snp": [f"rs{chrom}_{i}" for i in range(n)], "dim": 0, "p": 0.5})
        frame.to_parquet(gwas_dir(home, "c", "m", chrom) / "sumstats.parquet", index=False)
    _register_sumstats_view(home)
    counts = read_frame(home.warehouse_path(), "SELECT chrom, count(*) AS n FROM gwas_sumstats GROUP BY 1")
    assert dict(zip(counts["chrom"].astype(str), counts["n"], strict=True)) == {"6": 3, "11": 2}
