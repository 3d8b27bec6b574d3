-- One row per UDIP dimension x locus in which that dimension has a significant SNP.
with exploded as (
    select locus_key, cohort, model_id, locus, chrom, start_bp, end_bp, top_snp, p, dim as top_dim,
           cast(unnest(string_split(dims, ';')) as integer) as dim
    from {{ ref('loci_annotated') }}
)
select locus_key || ':' || cast(dim as varchar) as locus_dim_key, *
from exploded
