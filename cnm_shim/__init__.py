"""The Docker side: libnetwork's remote NetworkDriver and IpamDriver over CNI."""
