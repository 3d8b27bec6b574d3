-- Previously reported loci: the cohort's own reference file (for the synthetic demo, the planted
-- loci marked "reported") plus the paper's Table 2 lead SNPs, which carry no position and match by rsID.
select cohort, source, snp, cast(chrom as varchar) as chrom, cast(pos_bp as bigint) as pos_bp, trait
from {{ source('warehouse', 'reference_loci') }}
