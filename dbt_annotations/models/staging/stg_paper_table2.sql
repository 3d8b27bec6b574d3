select
    cast(locus_id as integer) as paper_locus,
    lead_snp as snp,
    gene,
    cast(vit_dim as integer) as paper_dim,
    cast(catalog_brain_structure as boolean) as catalog_brain_structure
from {{ ref('paper_table2_loci') }}
