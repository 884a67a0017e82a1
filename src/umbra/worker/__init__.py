"""umbra.worker"""
