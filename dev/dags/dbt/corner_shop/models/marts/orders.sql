{{ config(alias='fct_orders', tags=['finance']) }}

select
    order_id,
    customer_id,
    order_date,
    status,
    amount,
    payment_count,
    status = 'returned' as is_returned
from {{ ref('int_order_payments') }}
