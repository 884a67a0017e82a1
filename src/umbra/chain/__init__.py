"""umbra.chain"""
