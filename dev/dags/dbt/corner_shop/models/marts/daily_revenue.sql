{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='order_date',
    tags=['finance', 'daily'],
) }}

select
    order_date,
    count(*) as order_count,
    sum(amount) as revenue
from {{ ref('int_order_payments') }}
where status != 'returned'
{% if is_incremental() %}
    -- Re-merge the last two days already loaded: late payments may change them.
    and order_date >= (select date_sub(max(order_date), interval 1 day) from {{ this }})
{% endif %}
group by order_date
