"""Scripts that reproduce the designs we compare against, generated from the same RuleSet.

* ``script2019``: the 2019 istio/cni design, ``nsenter --net=<netns> istio-iptables.sh``: a bash
  script issuing one ``iptables`` call per rule (cleanup of earlier chains first, errors ignored,
  then ``-N`` and ``-A``/``-I``), here with ``iptables-legacy`` named explicitly.
* ``pipeline``: today's upstream apply pipeline (research report section 4.3): ``*-save`` state
  checks, one ``*-restore --noflush`` per family, a final save; all exec'd inside the netns.

Both measure only what happens after the pod lookup (no API call, no plugin process of their
own), so each is a lower bound of its design's real ADD; upstream's Go plugin itself is
measured separately as the full reference.
"""
