-- Singular test over two models: every paid amount in the mart matches the staged payments.
{{ config(tags=['finance']) }}

select o.order_id
from {{ ref('orders') }} as o
left join (
    select order_id, sum(amount) as amount
    from {{ ref('stg_payments') }}
    group by order_id
) as p on p.order_id = o.order_id
where o.amount != coalesce(p.amount, 0)
