"""facestudy.distill"""
