select customer_id, first_name, signup_date from {{ source('raw', 'raw_customers') }}
