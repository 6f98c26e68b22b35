select
    customer_id,
    first_name,
    last_name,
    concat(first_name, ' ', last_name) as full_name,
    signup_date
from {{ ref('raw_customers') }}
