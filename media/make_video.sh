#!/usr/bin/env bash
# Builds media/helmet-test.mp4 from the shippable photos in this folder (licence groups B and C of
# ../shared/media/PROVENANCE.md). Each photo is letterboxed onto a black 1280×720 canvas and held
# for HOLD seconds at 15 fps; H.264 High, an IDR frame every second, like the camera-like source the
# tests and the demo stream over RTSP. Needs ffmpeg (Debian package `ffmpeg`); only developers run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
HOLD=${HOLD:-1.5}
mapfile -t photos < <(ls overeasy_*.jpg aws_*.jpg)
inputs=(); filters=""; concat=""
for i in "${!photos[@]}"; do
  inputs+=(-loop 1 -framerate 15 -t "$HOLD" -i "${photos[$i]}")
  filters+="[$i:v]scale=1280:720:force_original_aspect_ratio=decrease:flags=bicubic,pad=1280:720:(ow-iw)/2:(oh-ih)/2:black,setsar=1,format=yuv420p[v$i];"
  concat+="[v$i]"
done
ffmpeg -hide_banner -loglevel error -y "${inputs[@]}" \
  -filter_complex "${filters}${concat}concat=n=${#photos[@]}:v=1:a=0,fps=15[out]" -map "[out]" \
  -c:v libx264 -profile:v high -level 4.0 -preset slow -crf 23 -g 15 -keyint_min 15 -sc_threshold 0 \
  -movflags +faststart helmet-test.mp4
printf '%s\n' "${photos[@]}" | nl -v0 -w3 -nrz -s' ' > frames.txt
echo "helmet-test.mp4: ${#photos[@]} photos × ${HOLD} s"
