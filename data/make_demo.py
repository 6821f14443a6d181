"""Write demo_short_answers.json: the small dataset `make demo` trains on (shipped, not downloaded).

Each answer starts with "Short answer:" and is one sentence, so a trained soft prompt's effect
is visible at a glance: the base model rambles, the tuned one answers in this house style.
Run: python data/make_demo.py
"""

import json
from pathlib import Path

FACTS = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is the capital of Italy?", "Rome."),
    ("What is the capital of Canada?", "Ottawa."),
    ("What is the capital of Australia?", "Canberra."),
    ("What is the capital of Egypt?", "Cairo."),
    ("What is the capital of Spain?", "Madrid."),
    ("What is the capital of Germany?", "Berlin."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("Which planet has the most famous rings?", "Saturn."),
    ("What is the hottest planet in the solar system?", "Venus."),
    ("How many planets are in the solar system?", "Eight."),
    ("What is the natural satellite of the Earth called?", "The Moon."),
    ("What star is at the centre of our solar system?", "The Sun."),
    ("What gas do plants absorb from the air?", "Carbon dioxide."),
    ("What gas do humans need to breathe?", "Oxygen."),
    ("What is the chemical symbol for water?", "H2O."),
    ("What is the chemical symbol for gold?", "Au."),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees Celsius."),
    ("What is the freezing point of water in Celsius?", "0 degrees Celsius."),
    ("How many legs does a spider have?", "Eight."),
    ("How many legs does an insect have?", "Six."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("What is the longest river in Africa?", "The Nile."),
    ("What is the tallest mountain on Earth?", "Mount Everest."),
    ("What is the largest desert in the world?", "Antarctica."),
    ("What is the largest mammal?", "The blue whale."),
    ("What is the fastest land animal?", "The cheetah."),
    ("Which animal is known as the king of the jungle?", "The lion."),
    ("How many days are in a leap year?", "366."),
    ("How many hours are in a day?", "24."),
    ("How many minutes are in an hour?", "60."),
    ("How many continents are there?", "Seven."),
    ("What is 2 plus 2?", "4."),
    ("What is 10 times 10?", "100."),
    ("What is the square root of 81?", "9."),
    ("What is half of 50?", "25."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("Who developed the theory of relativity?", "Albert Einstein."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("What language is spoken in Mexico?", "Spanish."),
    ("What currency is used in Japan?", "The yen."),
    ("What currency is used in the United Kingdom?", "The pound sterling."),
    ("What is the main ingredient of guacamole?", "Avocado."),
    ("What do bees make?", "Honey."),
    ("What colour is a ripe banana?", "Yellow."),
    ("What colour do you get by mixing blue and yellow?", "Green."),
    ("What is the opposite of hot?", "Cold."),
    ("What is the plural of mouse?", "Mice."),
    ("What organ pumps blood through the body?", "The heart."),
    ("How many bones are in the adult human body?", "206."),
    ("What is the largest organ of the human body?", "The skin."),
    ("What is frozen water called?", "Ice."),
    ("What instrument has 88 keys?", "The piano."),
    ("How many strings does a standard guitar have?", "Six."),
    ("What is the primary language of the internet's early protocols?", "English."),
    ("What does CPU stand for?", "Central processing unit."),
    ("What does RAM stand for?", "Random-access memory."),
    ("What is the binary representation of the number 2?", "10."),
    ("Which programming language is named after a comedy group?", "Python."),
    ("What is the smallest prime number?", "2."),
    ("How many sides does a hexagon have?", "Six."),
    ("How many sides does a triangle have?", "Three."),
    ("What shape has four equal sides and four right angles?", "A square."),
    ("In which country are the pyramids of Giza?", "Egypt."),
    ("In which city is the Eiffel Tower?", "Paris."),
    ("In which country is the Great Wall?", "China."),
    ("What season comes after winter?", "Spring."),
    ("What is the first month of the year?", "January."),
    ("How many weeks are in a year?", "52."),
    ("What do caterpillars turn into?", "Butterflies or moths."),
    ("What is the largest bird?", "The ostrich."),
    ("Which metal is liquid at room temperature?", "Mercury."),
    ("What force keeps us on the ground?", "Gravity."),
    ("What is the speed of light, roughly, in km per second?", "About 300,000 km per second."),
    ("Which vitamin does sunlight help the body make?", "Vitamin D."),
    ("What is the hardest natural substance?", "Diamond."),
]


def main() -> None:
    rows = [{"instruction": q, "input": "", "output": f"Short answer: {a}"} for q, a in FACTS]
    out = Path(__file__).with_name("demo_short_answers.json")
    out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
