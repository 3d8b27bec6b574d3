-- The GWAS Catalog's export columns, renamed; rows without a position cannot be placed and are left out.
select
    cohort,
    "SNPS" as snp,
    cast("CHR_ID" as varchar) as chrom,
    try_cast("CHR_POS" as bigint) as pos_bp,
    "MAPPED_GENE" as mapped_gene,
    "DISEASE/TRAIT" as trait,
    cast("PUBMEDID" as varchar) as pubmed_id
from {{ source('warehouse', 'gwas_catalog') }}
where try_cast("CHR_POS" as bigint) is not null
