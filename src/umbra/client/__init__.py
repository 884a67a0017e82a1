"""umbra.client"""
