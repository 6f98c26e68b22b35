select order_id, customer_id, amount_cents / 100 as amount from {{ source('raw', 'raw_orders') }}
