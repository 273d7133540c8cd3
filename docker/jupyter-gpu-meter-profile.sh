# /etc/profile.d/jupyter-gpu-meter.sh (from the notebook image): Debian's
# /etc/profile sets PATH afresh for login shells (ssh with a terminal): put the
# notebook's venv first again, so `python`, `pip` and `jupyter` are the same as
# in a JupyterLab terminal.
case ":$PATH:" in
    :/opt/notebook/bin:*) ;;
    *) PATH="/opt/notebook/bin:$PATH"; export PATH ;;
esac
