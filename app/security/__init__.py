"""Security of ledgerflow's Kafka links: throwaway TLS material, SCRAM users, ACL plans."""
