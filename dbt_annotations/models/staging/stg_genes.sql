select
    cohort,
    name as gene,
    cast(chrom as varchar) as chrom,
    cast(start_bp as bigint) as start_bp,
    cast(end_bp as bigint) as end_bp
from {{ source('warehouse', 'genes') }}
