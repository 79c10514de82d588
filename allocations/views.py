from django.shortcuts import redirect


def home(request):
    # The browser portal's pages hang off the admin until the PI and admin pages exist.
    return redirect("admin:index")
