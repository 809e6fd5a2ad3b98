"""facestudy.eval"""
