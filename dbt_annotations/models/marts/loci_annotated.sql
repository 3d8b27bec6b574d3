{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ delete_cohort_rows() }}") }}
-- One row per locus: its genes (overlapping, and the nearest to the top SNP) and the GWAS Catalog
-- traits reported inside it.
with loci as (select * from {{ ref('stg_loci') }} {{ cohort_filter() }}),
genes as (select * from {{ ref('stg_genes') }}),
overlap as (
    select l.locus_key, string_agg(distinct g.gene, ';' order by g.gene) as overlapping_genes
    from loci l join genes g
      on g.cohort = l.cohort and g.chrom = l.chrom and g.start_bp <= l.end_bp and g.end_bp >= l.start_bp
    group by l.locus_key
),
nearest as (
    select locus_key, gene as nearest_gene, distance_bp as nearest_gene_distance_bp
    from (
        select l.locus_key, g.gene,
               greatest(g.start_bp - l.top_pos_bp, l.top_pos_bp - g.end_bp, 0) as distance_bp,
               row_number() over (partition by l.locus_key
                                  order by greatest(g.start_bp - l.top_pos_bp, l.top_pos_bp - g.end_bp, 0), g.gene) as rn
        from loci l join genes g on g.cohort = l.cohort and g.chrom = l.chrom
    ) where rn = 1
),
catalog as (
    select l.locus_key, count(*) as n_catalog_hits, string_agg(distinct c.trait, ';' order by c.trait) as catalog_traits
    from loci l join {{ ref('stg_catalog') }} c
      on c.cohort = l.cohort and c.chrom = l.chrom and c.pos_bp between l.start_bp and l.end_bp
    group by l.locus_key
)
select
    loci.*,
    overlap.overlapping_genes,
    nearest.nearest_gene,
    nearest.nearest_gene_distance_bp,
    coalesce(catalog.n_catalog_hits, 0) as n_catalog_hits,
    catalog.catalog_traits
from loci
left join overlap using (locus_key)
left join nearest using (locus_key)
left join catalog using (locus_key)
