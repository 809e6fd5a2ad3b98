"""facestudy.interpret"""
