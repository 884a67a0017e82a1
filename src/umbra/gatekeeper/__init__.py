"""umbra.gatekeeper"""
