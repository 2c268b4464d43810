"""Harnesses shared by the tests, the benchmarks and the demos: a real mesh on loopback (`localmesh`), the
agent on a static bootstrap (`static_agent`), dnsmasq as the DNS peer (`dnsmasq`), process and port helpers
(`procs`, `ports`) and polling with a deadline (`poll`). They drive the real agent and the real Envoy; none
of them is imported by the agent."""
