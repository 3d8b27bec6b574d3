{#-
  The marts are built one cohort at a time: Dagster passes the run's partition as the var `cohort`
  (dbt build --vars '{"cohort": "demo"}'). An incremental build first deletes that cohort's rows, then
  inserts them again, so other cohorts' rows are left as they are and a locus that disappeared from
  a re-run disappears here too. Without the var (a plain `dbt build`) every cohort is rebuilt.
-#}

{% macro cohort_filter(column='cohort') -%}
  {%- if var('cohort', none) is not none -%}
    where {{ column }} = '{{ var("cohort") }}'
  {%- endif -%}
{%- endmacro %}

{% macro delete_cohort_rows() -%}
  {%- if is_incremental() -%}
    {%- if var('cohort', none) is not none -%}
      delete from {{ this }} where cohort = '{{ var("cohort") }}'
    {%- else -%}
      delete from {{ this }}
    {%- endif -%}
  {%- endif -%}
{%- endmacro %}
