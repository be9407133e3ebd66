"""Constants the grid tests share."""

PORT = 7101  # the VO service's TCP port in the grid tests
POOL = (30000, 30999)  # the UID range of the test VO's leases
