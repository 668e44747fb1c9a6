"""Fleet runs: inventory -> facts per host -> kinds -> one build per kind -> installs in batches -> one report.

SSH goes through Fabric 3 (a `fabric.Connection` per host, an Invoke Context): it reads ssh_config (User, Port,
IdentityFile, ProxyJump) and copies files over SFTP; the toolkit only adds strict host keys, a capped pool,
remote timeouts that end the remote process group, and the policy (canary, batches, failure budget).
"""
