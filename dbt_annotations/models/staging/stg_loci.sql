-- Rename and cast only: FUMA's column names to the warehouse's key names.
select
    cohort,
    model_id,
    cohort || ':' || model_id || ':' || coalesce(method, 'minp') || ':' || cast("GenomicLocus" as varchar) as locus_key,
    coalesce(method, 'minp') as method,
    cast("GenomicLocus" as integer) as locus,
    "rsID" as top_snp,
    cast("chr" as varchar) as chrom,
    cast("pos" as bigint) as top_pos_bp,
    cast("start" as bigint) as start_bp,
    cast("end" as bigint) as end_bp,
    cast("p" as double) as p,
    cast(dim as integer) as dim,
    dims,
    cast("nLeadSNPs" as integer) as n_lead_snps,
    "LeadSNPs" as lead_snps
from {{ source('warehouse', 'genomic_risk_loci') }}
