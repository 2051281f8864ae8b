"""Deployment: docker-compose.yml's HAProxy config and the network-namespace proof (deploy/netns_demo.py)."""
