"""umbra.enclave"""
