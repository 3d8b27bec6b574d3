{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ delete_cohort_rows() }}") }}
-- One row per novel locus: no reference locus and no GWAS Catalog brain-structure association within
-- the locus +- 250 kb, and none of its lead SNPs in the reference sets (the paper's Table 2 rule).
{% set flank_bp = 250000 %}
with loci as (select * from {{ ref('loci_annotated') }} {{ cohort_filter() }}),
brain_catalog as (
    select c.* from {{ ref('stg_catalog') }} c
    where exists (select 1 from {{ ref('brain_structure_terms') }} t where lower(c.trait) like '%' || t.term || '%')
),
near_reference as (
    select distinct l.locus_key
    from loci l join {{ ref('stg_reference_loci') }} r
      on r.cohort = l.cohort and r.chrom = l.chrom
     and r.pos_bp between l.start_bp - {{ flank_bp }} and l.end_bp + {{ flank_bp }}
),
near_brain_catalog as (
    select distinct l.locus_key
    from loci l join brain_catalog c
      on c.cohort = l.cohort and c.chrom = l.chrom
     and c.pos_bp between l.start_bp - {{ flank_bp }} and l.end_bp + {{ flank_bp }}
),
lead_in_paper as (
    select distinct l.locus_key
    from loci l join {{ ref('stg_paper_table2') }} p on list_contains(string_split(l.lead_snps, ';'), p.snp)
)
select loci.*
from loci
where locus_key not in (select locus_key from near_reference)
  and locus_key not in (select locus_key from near_brain_catalog)
  and locus_key not in (select locus_key from lead_in_paper)
