"""facestudy.models"""
