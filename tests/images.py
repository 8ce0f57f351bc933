"""A busybox image made from Debian's busybox-static, with no registry: an OCI
image layout tarball that `ctr image import` (and `docker load`) accept."""

import gzip
import hashlib
import io
import json
import tarfile

APPLETS = ("sh", "ping", "ip", "sleep", "nc", "httpd", "ifconfig", "echo", "cat", "ls", "wget", "ping6")


def _entry(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, target
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _rootfs_layer(busybox: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("bin", "etc", "proc", "sys", "dev", "tmp", "var", "root"):
            _entry(tar, folder, kind=tarfile.DIRTYPE, mode=0o755)
        with open(busybox, "rb") as f:
            _entry(tar, "bin/busybox", f.read(), mode=0o755)
        for applet in APPLETS:
            _entry(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, target="busybox", mode=0o777)
        _entry(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _entry(tar, "etc/group", b"root:x:0:\n")
    return buffer.getvalue()


def write_busybox_image(path: str, ref: str, busybox: str = "/bin/busybox") -> None:
    layer = _rootfs_layer(busybox)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        def blob(data: bytes) -> dict:
            digest = hashlib.sha256(data).hexdigest()
            _entry(tar, f"blobs/sha256/{digest}", data)
            return {"digest": f"sha256:{digest}", "size": len(data)}

        layer_blob = blob(gzip.compress(layer, mtime=0))
        config_blob = blob(json.dumps(config).encode())
        manifest = blob(json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_blob}],
        }).encode())
        _entry(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _entry(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
            "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
        }]}).encode())
