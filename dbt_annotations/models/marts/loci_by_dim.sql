{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ delete_cohort_rows() }}") }}
-- One row per UDIP dimension x locus in which that dimension has a significant SNP. Loci of the
-- multivariate (joint) test have no single dimension and are not listed.
with exploded as (
    select locus_key, cohort, model_id, method, locus, chrom, start_bp, end_bp, top_snp, p, dim as top_dim,
           cast(unnest(string_split(dims, ';')) as integer) as dim
    from (select * from {{ ref('loci_annotated') }} {{ cohort_filter() }})
    where coalesce(dims, '') <> ''
)
select locus_key || ':' || cast(dim as varchar) as locus_dim_key, *
from exploded
