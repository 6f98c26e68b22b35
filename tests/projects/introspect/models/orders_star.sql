select {{ star(ref('stg_orders'), except=['customer_id']) }} from {{ ref('stg_orders') }}
