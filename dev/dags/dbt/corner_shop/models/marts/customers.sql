{{ config(
    pre_hook="{{ audit_insert('pre-hook', this.name) }}",
    post_hook="{{ audit_insert('post-hook', this.name) }}",
) }}

with order_totals as (
    select
        customer_id,
        count(*) as order_count,
        min(order_date) as first_order_date,
        max(order_date) as last_order_date
    from {{ ref('stg_orders') }}
    group by customer_id
),

paid as (
    select o.customer_id, sum(p.amount) as lifetime_value
    from {{ ref('stg_payments') }} as p
    join {{ ref('stg_orders') }} as o on o.order_id = p.order_id
    group by o.customer_id
)

select
    c.customer_id,
    c.full_name,
    c.signup_date,
    coalesce(t.order_count, 0) as order_count,
    t.first_order_date,
    t.last_order_date,
    coalesce(paid.lifetime_value, 0) as lifetime_value
from {{ ref('stg_customers') }} as c
left join order_totals as t on t.customer_id = c.customer_id
left join paid on paid.customer_id = c.customer_id
